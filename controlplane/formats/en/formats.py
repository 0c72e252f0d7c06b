"""Date and time formats for English (the only language here), used by the admin.

Times with seconds and their zone, the way the dashboard writes them: a fire at
14:00:55 reads "2026-12-04 14:00:55 UTC", not "Dec. 4, 2026, 2 p.m.".
"""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
