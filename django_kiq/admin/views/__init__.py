"""The console's views, one module per page group; ``base`` holds what they share."""
