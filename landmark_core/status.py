"""A photo's tag status, the values of the tag store's ``status`` column: tagged | no_landmark | failed."""

TAGGED, NO_LANDMARK, FAILED = "tagged", "no_landmark", "failed"
STATUSES = (TAGGED, NO_LANDMARK, FAILED)
