"""Dates as the admin shows them: ISO-like and labelled with their zone (TIME_ZONE, UTC), so an
operator never reads a UTC time as local. Everything else comes from Django's English formats."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
