"""What the commands share on their command lines: the user-error exit code, help with defaults, the device."""
