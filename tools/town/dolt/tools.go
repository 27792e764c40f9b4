//go:build tools

package tools

import _ "github.com/dolthub/dolt/go/cmd/dolt"
