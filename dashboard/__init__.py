"""The Flask moderator dashboard (issue 4)."""
