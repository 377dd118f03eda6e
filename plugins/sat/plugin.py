"""Entry point of the SAT target plugin: registers the target, its rules and checks.

Rules and checks are imported inside their hooks: porter calls those only when a command needs them, so
`porter status` never loads libcst."""
import porter

from .target import SAT


@porter.hookimpl
def porter_register_targets(register):
    register(SAT)


@porter.hookimpl
def porter_register_rules(register):
    from .rules import ALL_RULES

    for rule in ALL_RULES:
        register(rule)


@porter.hookimpl
def porter_register_checks(register):
    from .checks import CHECKS

    for check in CHECKS:
        register(check)
