"""Entry point of the torch rule pack: rules for any code (``target="any"``), which ``porter patch PATH|DIST`` and
``porter exec`` apply to targets no plugin registered. Rules are imported inside the hook, so `porter status`
never loads libcst."""
import porter


@porter.hookimpl
def porter_register_rules(register):
    from .rules import ALL_RULES

    for rule in ALL_RULES:
        register(rule)
