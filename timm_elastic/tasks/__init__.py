"""Tasks beyond ImageNet classification that the paper evaluates (Sec. 4.2-4.3)."""
