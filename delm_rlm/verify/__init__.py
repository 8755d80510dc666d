"""The admission gate: form, quotes, code checks re-run in a fresh sandbox, the model judge."""
