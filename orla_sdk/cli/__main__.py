from orla_sdk.cli.commands import main

raise SystemExit(main())
