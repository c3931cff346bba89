"""The model server: the one client session, what its chat template takes, its token counts."""
