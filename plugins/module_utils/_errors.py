# Copyright (c) osvirt developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Errors of osvirt.vz.

PRIVATE: this file is internal to the osvirt.vz collection and may change at any time.
"""

from __future__ import annotations


class VzError(Exception):
    """An error with one clear message for the operator, plus optional details.

    Modules turn it into ``fail_json(msg=message, **details)``.
    """

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self):
        return self.message
