"""The installed SwissArmyTransformer, as porter sees it."""
from porter.target import Target

SAT = Target(
    name="sat",
    distribution="SwissArmyTransformer",
    package="sat",
    versions=">=0.4.12,<0.5",
    description="SwissArmyTransformer: the transformer library VisualGLM-6B and ChatGLM-6B are built on",
)
