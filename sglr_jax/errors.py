"""Errors a user can fix: the command line prints them as one line and exits with status 2."""
from __future__ import annotations


class UserError(Exception):
  """An error in the command, the config, the workdir or the data that the user can fix."""


class ConfigError(UserError, ValueError):
  """A config field holds a value that is not allowed."""


class NoCheckpointError(UserError, FileNotFoundError):
  """The workdir has no (readable) checkpoint of the kind asked for."""


class DatasetNotPreparedError(UserError, ValueError):
  """A dataset is not where the config says, or not in a readable format."""
