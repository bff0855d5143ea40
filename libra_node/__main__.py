from libra_node.cli import main

raise SystemExit(main())
