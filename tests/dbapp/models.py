from django.db import models


class Counter(models.Model):
    """A row jobs lock and increment (select_for_update) or read."""

    name = models.CharField(max_length=64, unique=True)
    value = models.IntegerField(default=0)


class Note(models.Model):
    """One per job run: what ran, on which thread and on which server connection."""

    token = models.CharField(max_length=64, db_index=True)
    seq = models.IntegerField()
    thread = models.CharField(max_length=64)
    backend_pid = models.IntegerField(null=True)
    seen = models.IntegerField(null=True)  # a counter value the job read
