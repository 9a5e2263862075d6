"""The ``llmgw`` command line: one module per command group, one error funnel in ``main``."""
