"""``manage.py kiq_demo``: enqueue a mix of the demo jobs so the admin has something to show.

Enqueues run outside any transaction, so each job is in Redis when its call returns.
"""

from django.core.management.base import BaseCommand

from django_kiq import batch, chain, group
from testproject.demo.jobs import (always_fails, crunch, double, fast, flaky, import_finished,
                                   import_row, slow, total)


class Command(BaseCommand):
    help = ("Enqueue sample jobs: fast, slow, flaky, always-failing and scheduled ones, a batch "
            "with callbacks, a chain, a chord and a job reporting its progress.")

    def add_arguments(self, parser):
        parser.add_argument("--fast", type=int, default=200, help="fast jobs now (default 200)")
        parser.add_argument("--slow", type=int, default=5, help="slow jobs (default 5)")
        parser.add_argument("--flaky", type=int, default=20, help="flaky jobs (default 20)")
        parser.add_argument("--failing", type=int, default=3, help="always failing (default 3)")
        parser.add_argument(
            "--scheduled", type=int, default=10, help="fast jobs spread over the next minute"
        )
        parser.add_argument("--rows", type=int, default=100,
                            help="jobs in the import batch (default 100)")
        parser.add_argument("--crunch-steps", type=int, default=20,
                            help="half-second steps of the job reporting progress (default 20)")

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
        # Workflows (docs/workflows.md): they fill the Batches tab.
        with batch(description=f"Demo import: {options['rows']} rows",
                   on_success=import_finished.s("succeeded"),
                   on_complete=import_finished.s("complete"),
                   on_death=import_finished.s("a row died")) as rows:
            import_row.enqueue_many([(i,) for i in range(options["rows"])])
        chain(double.s(1), double.s(), double.s(), pass_result=True,
              description="Demo chain: 1 doubled three times").enqueue()
        group(*(double.s(i) for i in range(1, 6)), description="Demo chord: 2+4+6+8+10").enqueue(
            then=total.s(), pass_results=True)
        crunch.enqueue(options["crunch_steps"])
        self.stdout.write(
            self.style.SUCCESS(
                f"Enqueued {options['fast']} fast, {options['slow']} slow (queue 'slow'), "
                f"{options['flaky']} flaky, {options['failing']} always_fails, "
                f"{count} fast scheduled over the next minute, batch {rows.bid} of "
                f"{options['rows']} import rows, a chain, a chord and a crunch job reporting "
                "its progress."
            )
        )
