"""`python -m llmcourse.course.book`: execute every notebook and build the book (what `make course` runs)."""

import sys

from llmcourse.course.book import main

sys.exit(main())
