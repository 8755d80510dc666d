"""delm_rlm."""
