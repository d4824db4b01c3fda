"""Analysis over the records runs write: tables with pandas, plots with matplotlib."""
