"""Finding a plugin's executable by its `type`, as libcni does: a plain file name looked
up in a list of directories (CNI_PATH, or a runtime's bin dirs), the first executable
regular file winning."""

import os


def is_plain_name(plugin_type) -> bool:
    """A plugin type names a file in a bin directory, never a path."""
    return isinstance(plugin_type, str) and plugin_type not in ("", ".", "..") \
        and "/" not in plugin_type and "\0" not in plugin_type


def locate(plugin_type: str, directories) -> str:
    """The first executable regular file `plugin_type` in `directories`; "" when none."""
    for directory in directories:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return ""
