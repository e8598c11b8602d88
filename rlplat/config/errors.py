class ConfigError(ValueError):
    """A config key, value, path or combination is wrong; the message names it and what is allowed."""
