"""Events of each ID merge mode, batches, the sender, Mixpanel's answers, pacing."""
