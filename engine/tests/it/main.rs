mod placeholder_removed_later {}
