"""porter_sat: the SwissArmyTransformer target plugin (rules and checks for `porter patch sat`)."""
