"""``manage.py kiq_demo``: enqueue a mix of the demo jobs so the admin has something to show.

Enqueues run outside any transaction, so each job is in Redis when its call returns.
"""

from django.core.management.base import BaseCommand

from testproject.demo.jobs import always_fails, fast, flaky, slow


class Command(BaseCommand):
    help = "Enqueue sample jobs: fast, slow, flaky, always-failing and scheduled ones."

    def add_arguments(self, parser):
        parser.add_argument("--fast", type=int, default=200, help="fast jobs now (default 200)")
        parser.add_argument("--slow", type=int, default=5, help="slow jobs (default 5)")
        parser.add_argument("--flaky", type=int, default=20, help="flaky jobs (default 20)")
        parser.add_argument("--failing", type=int, default=3, help="always failing (default 3)")
        parser.add_argument(
            "--scheduled", type=int, default=10, help="fast jobs spread over the next minute"
        )

    def handle(self, *args, **options):
        # One round trip for the bulk of the work, as an application would do it.
        fast.enqueue_many([(n,) for n in range(options["fast"])])
        for _ in range(options["slow"]):
            slow.enqueue(2.0)
        flaky.enqueue_many([(0.5,) for _ in range(options["flaky"])])
        for i in range(options["failing"]):
            always_fails.enqueue(reason=f"demo failure {i + 1}")
        count = options["scheduled"]
        for i in range(count):
            fast.enqueue_in(60 * (i + 1) / max(count, 1), 1000 + i)
        self.stdout.write(
            self.style.SUCCESS(
                f"Enqueued {options['fast']} fast, {options['slow']} slow (queue 'slow'), "
                f"{options['flaky']} flaky, {options['failing']} always_fails, "
                f"and {count} fast scheduled over the next minute."
            )
        )
