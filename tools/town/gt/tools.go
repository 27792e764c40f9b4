//go:build tools

package tools

import _ "github.com/steveyegge/gastown/cmd/gt"
