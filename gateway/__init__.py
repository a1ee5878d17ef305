"""The serving gateway (steps E and F, docs/RECEIPTS.md): the audited model behind an OpenAI API, a receipt per answer."""
