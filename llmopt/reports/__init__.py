"""Reports read result folders and nothing else: tables, plots and recommendations over a sweep's cells, with the
published figures beside them."""
