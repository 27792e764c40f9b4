"""The town scripts (startup, backup, restore) run on a real town built by the real gt, bd and dolt."""
