"""eOn's ext_pot route: `pace_driver.py` (the program eOn's ``ext_pot_path`` runs per force call), the
persistent `evaluator` it forwards to, and the stdlib-only `protocol` both speak."""
