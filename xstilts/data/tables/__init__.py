"""Task tables: one row per dataset (XTREME targets, intermediate tasks, the synthetic world)."""
