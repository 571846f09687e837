"""Usage reports from resource services: checked, then handed to the rules as one signal."""
