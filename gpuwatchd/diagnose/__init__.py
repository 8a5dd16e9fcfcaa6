"""``gpuwatchd diagnose``: gather facts, judge them with the core's rules, render the verdict."""
