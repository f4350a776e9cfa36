"""Emitters: prepare plain data from the quantised IR and render the Jinja templates."""
