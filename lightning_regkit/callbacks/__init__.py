"""Lightning callbacks of lightning_regkit (import them from ``lightning_regkit``)."""
