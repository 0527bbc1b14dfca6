"""What a finished run or sweep leaves for people: metrics.json, report.md, report.html, plots."""
