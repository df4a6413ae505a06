"""The simulator: the same DAG and schedule on a device profile, producing a Timeline."""
