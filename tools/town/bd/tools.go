//go:build tools

package tools

import _ "github.com/steveyegge/beads/cmd/bd"
