"""Self-contained web pages (HTML + JS, no server): INV's reveal game and its report."""
