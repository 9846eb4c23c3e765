"""Planning before compute: the one FLOP count (flops), the memory planner (memory), and from a fitted law to a
runnable spec (recommend)."""
