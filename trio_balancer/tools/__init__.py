"""Things run beside the balancer: the provider simulator and the Claude Code CLI helper.

May import base and protocol; the balancer itself never imports tools.
"""
