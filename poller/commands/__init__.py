"""One module per operator command (check, backfill, tail, demo); cli.py dispatches to them."""
