"""The report's style: system fonts only (none fetched), scoped to ``.bfr`` so that a
notebook's own styles and the report's do not mix; A4 print rules keep charts whole."""

from __future__ import annotations

CSS = """
.bfr{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d2329;max-width:980px;margin:0 auto;padding:12px 16px}
.bfr h1{font-size:20px;margin:4px 0 8px}
.bfr h2{font-size:17px;margin:26px 0 8px;padding-bottom:3px;border-bottom:1px solid #d5dae0;
 break-after:avoid;page-break-after:avoid}
.bfr h3{font-size:14px;margin:14px 0 4px;break-after:avoid;page-break-after:avoid}
.bfr p{margin:4px 0 8px}
.bfr .verdict{font-size:17px;font-weight:600;padding:8px 12px;background:#eef4fb;
 border-left:4px solid #2f6db5}
.bfr .when{color:#5b6670;font-size:12px;overflow-wrap:anywhere}
.bfr figure{margin:6px 0 10px;break-inside:avoid;page-break-inside:avoid}
.bfr svg.chart{display:block;width:100%;height:auto;max-width:760px}
.bfr svg text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#1d2329}
.bfr svg .bar rect,.bfr svg .col rect{fill:#2f6db5}
.bfr svg .tick{fill:#5b6670;font-size:11px}
.bfr svg .axis{stroke:#9aa4ad;stroke-width:1}
.bfr svg .marker line{stroke:#c0392b;stroke-width:2;stroke-dasharray:5 3}
.bfr svg .marker text{fill:#c0392b;font-weight:600}
.bfr svg .trace{fill:none;stroke:#2f6db5;stroke-width:2}
.bfr table{border-collapse:collapse;font-size:12.5px;margin:4px 0 10px;max-width:100%}
.bfr th,.bfr td{padding:3px 8px;border-bottom:1px solid #e6e9ed;text-align:left;
 vertical-align:top;overflow-wrap:anywhere}
.bfr th{background:#f5f7f9;font-weight:600;white-space:nowrap}
.bfr td.num,.bfr th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bfr tr{break-inside:avoid;page-break-inside:avoid}
.bfr code{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:12px}
@media print{
 @page{size:A4;margin:14mm 12mm}
 .bfr{max-width:none;padding:0;font-size:11.5px}
 .bfr .verdict{background:none;border-left:3px solid #2f6db5}
 .bfr svg.chart{max-width:100%}
}
"""
