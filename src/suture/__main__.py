from suture.cli import main

raise SystemExit(main())
