"""``python -m layerlab.book``: build the book (see ``layerlab.book.build``)."""
from layerlab.book.build import main

raise SystemExit(main())
