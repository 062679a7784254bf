"""`python -m llmcourse.book`: execute every notebook and build the book (what `make course` runs)."""

import sys

from llmcourse.book import main

sys.exit(main())
