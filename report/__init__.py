"""Reports: results.json -> tables, figures, the results index and the README blocks."""
