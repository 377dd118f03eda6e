"""Entry point of the SAT target plugin: registers the target, its rules and checks."""
import porter

from .rules import ALL_RULES
from .target import SAT


@porter.hookimpl
def porter_register_targets(register):
    register(SAT)


@porter.hookimpl
def porter_register_rules(register):
    for rule in ALL_RULES:
        register(rule)


@porter.hookimpl
def porter_register_checks(register):
    from .checks import CHECKS

    for check in CHECKS:
        register(check)
