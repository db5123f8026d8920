"""One command's life: validate, send, summarise; the send phase; rehearse."""
