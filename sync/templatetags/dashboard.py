"""The dashboard's wording of a sync run (sync/wording.py) as template filters."""

from django import template

from sync import wording

register = template.Library()
register.filter("run_progress", wording.run_progress)
register.filter("run_changes", wording.run_changes)
register.filter("run_took", wording.run_took)
