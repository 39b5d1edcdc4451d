from django.apps import AppConfig


class DbAppConfig(AppConfig):
    name = "tests.dbapp"
    label = "dbapp"
    default_auto_field = "django.db.models.BigAutoField"
